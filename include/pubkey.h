/* SPDX-License-Identifier: Apache-2.0 */
/* Ed25519 public keys outside the token: PEM (SubjectPublicKeyInfo) in and
 * out, verification with OpenSSL, the derived kid, and the JSON public-key
 * object used by the verbs and the witness documents. */
#pragma once
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* PEM SubjectPublicKeyInfo, NUL-terminated, malloc'd. */
int pubkey_to_pem(const uint8_t pk[32], char **ret);
/* Accepts a PEM SubjectPublicKeyInfo for Ed25519 (or 64 hex digits). */
int pubkey_parse(const char *text, uint8_t ret_pk[32]);
/* Pure Ed25519 verification; 0 when valid, LV_ERR_CRYPTO otherwise. */
int pubkey_verify(const uint8_t pk[32], const uint8_t *msg, size_t len, const uint8_t sig[64]);
/* "lv-" + first 16 hex digits of SHA-256(pk). */
void pubkey_default_kid(const uint8_t pk[32], char ret[20]);
/* {"alg":"Ed25519","kid":kid,"public_key_hex":...,"public_key_pem":...} */
int pubkey_json(const uint8_t pk[32], const char *kid, cJSON **ret);
/* domain || 0x0A || body, malloc'd: the message every signature covers. */
int pubkey_signed_message(const char *domain, const char *body, size_t body_len, uint8_t **ret,
                          size_t *ret_len);
