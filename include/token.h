/* SPDX-License-Identifier: Apache-2.0 */
/* The PKCS#11 token: the only module that talks to p11-kit. Private keys and
 * the spool keys stay on the token; this API hands out only public keys,
 * signatures, wrapped blobs and ciphertexts. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Token Token;

typedef struct TokenConfig {
    const char *module_path; /* NULL: the URI's module-path, else p11-kit's registered modules */
    const char *signing_uri; /* pkcs11: URI of the Ed25519 private key (may be NULL) */
    const char *kek_uri;     /* pkcs11: URI of the AES-256 KEK (may be NULL) */
    const char *pin_file;    /* NULL: $CREDENTIALS_DIRECTORY/pkcs11-pin, then pin-source= */
    const char *key_id;      /* NULL: "lv-" + 16 hex of SHA-256(public key) */
    /* Mechanism selection (docs/token.md, "Capability probe and profiles"),
     * from ATTESTO_LOCAL_VAULT_PKCS11_PROFILE, _PKCS11_EDDSA_MECHANISM and
     * _PKCS11_EDDSA_KEY_TYPE. NULL: auto, and the profile's ids. */
    const char *profile;         /* "auto", "standard" or "luna-legacy" */
    const char *eddsa_mechanism; /* hex CK_MECHANISM_TYPE, e.g. "0x80000c03" */
    const char *eddsa_key_type;  /* hex CK_KEY_TYPE, e.g. "0x80000012" */
} TokenConfig;

#define TOKEN_ED25519_PK_LEN  32
#define TOKEN_ED25519_SIG_LEN 64
#define TOKEN_GCM_IV_LEN      12
#define TOKEN_GCM_TAG_LEN     16
#define TOKEN_WRAPPED_DEK_LEN 40 /* AES-256 key under CKM_AES_KEY_WRAP_PAD */
#define TOKEN_KID_MAX         129

/* Loads the module (p11-kit managed), finds the token named by the URIs,
 * reads the PIN (never retried after CKR_PIN_INCORRECT; refuses when the
 * token reports the user PIN locked), logs in and keeps one owner session for
 * the life of the Token, then probes the token's mechanisms (see
 * token_mechanism). Errors: LV_ERR_NOMOD, LV_ERR_NOTOKEN, LV_ERR_PIN,
 * LV_ERR_AMBIG, LV_ERR_TOKEN, LV_ERR_INPUT (malformed URI, a bad profile or
 * override value), all with detail. A role the token cannot serve is not an
 * error here: the key check that needs it fails (token_check_*). */
int token_open(const TokenConfig *cfg, Token **ret);
/* Closes the session and finalizes; accepts NULL, returns NULL. */
Token *token_close(Token *t);

/* Finds the signing key and checks it: CKK_EC_EDWARDS on Ed25519, sensitive,
 * not extractable. Caches the handle and public key. LV_ERR_NOKEY,
 * LV_ERR_AMBIG or LV_ERR_KEYBAD with detail otherwise. */
int token_check_signing_key(Token *t);
/* Finds and checks the KEK: CKK_AES, 32 bytes, CKA_WRAP and CKA_UNWRAP,
 * sensitive, not extractable. */
int token_check_kek(Token *t);

/* The raw 32-byte Ed25519 public key of the signing key (both CKA_EC_POINT
 * forms and both CKA_EC_PARAMS encodings accepted). */
int token_public_key(Token *t, uint8_t ret_pk[TOKEN_ED25519_PK_LEN]);
/* The kid: the configured one, else "lv-" + first 16 hex of SHA-256(pk). */
const char *token_key_id(Token *t);

/* Pure Ed25519 (CKM_EDDSA, no parameters, single-part C_Sign).
 * Thread safety: token_sign, token_aead_* and token_public_key may be called
 * from several threads on one Token. Each call borrows a whole PKCS#11
 * session from a small pool (the owner session plus up to 3 more opened on
 * demand), so no session is ever used by two threads at once. token_open,
 * token_close, token_keys_init and token_dek_load/create are for one thread
 * (call them before starting workers). A Token must not cross fork(). */
int token_sign(Token *t, const uint8_t *msg, size_t len, uint8_t ret_sig[TOKEN_ED25519_SIG_LEN]);

/* Spool data key. token_dek_create generates an AES-256 session key on the
 * token, wraps it under the KEK with CKM_AES_KEY_WRAP_PAD, destroys it and
 * returns the 40-byte blob. token_dek_load unwraps a blob into a sensitive,
 * non-extractable session key held by the owner session and used by the
 * AEAD calls below. */
int token_dek_create(Token *t, uint8_t ret_wrapped[TOKEN_WRAPPED_DEK_LEN]);
int token_dek_load(Token *t, const uint8_t *wrapped, size_t wrapped_len);

/* AES-256-GCM on the token with the loaded DEK: 12-byte IV, 16-byte tag,
 * non-empty AAD. out receives ciphertext||tag (pt_len + 16 bytes).
 * Decrypt returns LV_ERR_CRYPTO on any authentication failure (a bad row,
 * not a broken token). */
int token_aead_encrypt(Token *t, const uint8_t iv[TOKEN_GCM_IV_LEN], const uint8_t *aad,
                       size_t aad_len, const uint8_t *pt, size_t pt_len, uint8_t *out);
int token_aead_decrypt(Token *t, const uint8_t iv[TOKEN_GCM_IV_LEN], const uint8_t *aad,
                       size_t aad_len, const uint8_t *ct_tag, size_t ct_tag_len, uint8_t *out);

/* keys init: creates on the token whichever of the signing key pair and the
 * KEK named by the configuration are missing, with CKA_SENSITIVE=TRUE and
 * CKA_EXTRACTABLE=FALSE; refuses an existing object whose attributes are
 * wrong. ret_created_* tell what was made. */
int token_keys_init(Token *t, bool *ret_created_signing, bool *ret_created_kek);

/* The capability probe: what token_open chose for each role. */
typedef enum {
    TOKEN_ROLE_SIGN, /* Ed25519, pure, single-part C_Sign */
    TOKEN_ROLE_WRAP, /* the DEK under the KEK: RFC 5649 */
    TOKEN_ROLE_SEAL, /* the rows: AES-256-GCM */
    TOKEN_ROLE__MAX
} TokenRole;

/* The one wrap algorithm the spool knows, by the name its metadata records. */
#define TOKEN_WRAP_ALG "rfc5649"

typedef struct TokenMechanism {
    bool available;          /* false: the role cannot run on this token (why says so) */
    unsigned long mechanism; /* the CK_MECHANISM_TYPE used */
    char name[48];           /* "CKM_EDDSA", "CKM_VENDOR_DEFINED+0xc03", ... */
    const char *algorithm;   /* "ed25519", TOKEN_WRAP_ALG, "aes-256-gcm" */
    unsigned long key_type;  /* sign: the CKA_KEY_TYPE the key must have */
    char why[320];           /* how it was chosen (the known-answer test), or why none */
} TokenMechanism;

/* The probe's choice for a role (never NULL for a valid role). */
const TokenMechanism *token_mechanism(Token *t, TokenRole role);
/* The signing profile in use: "standard", "luna-legacy" or "custom"
 * (explicit mechanism/key-type overrides), and how it was selected. */
const char *token_profile(Token *t);
/* The token's manufacturerID and model (spaces trimmed). */
const char *token_manufacturer(Token *t);
const char *token_model(Token *t);
/* What the probe cost at token_open, in microseconds. */
long long token_probe_us(Token *t);

/* A readable name for a CK_RV value ("CKR_PIN_INCORRECT"). */
const char *token_rv_name(unsigned long rv);

/* For doctor: the label of the token in use, and where the PIN that logged
 * in came from (a path, or "(no login required)"). */
const char *token_label(Token *t);
const char *token_pin_source(Token *t);

/* Key rotation (docs/operations.md, "Key rotation").
 *
 * A spool whose DEK was rotated holds rows under several DEKs at once: each
 * is unwrapped into one of TOKEN_DEK_SLOTS slots (sensitive, never
 * extractable session keys, like the DEK of token_dek_load, which is
 * separate from these slots) and used by the _slot AEAD calls. */
#define TOKEN_DEK_SLOTS 8
int token_dek_load_slot(Token *t, unsigned slot, const uint8_t *wrapped, size_t wrapped_len);
void token_dek_unload_slot(Token *t, unsigned slot);
int token_aead_encrypt_slot(Token *t, unsigned slot, const uint8_t iv[TOKEN_GCM_IV_LEN],
                            const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
                            uint8_t *out);
int token_aead_decrypt_slot(Token *t, unsigned slot, const uint8_t iv[TOKEN_GCM_IV_LEN],
                            const uint8_t *aad, size_t aad_len, const uint8_t *ct_tag,
                            size_t ct_tag_len, uint8_t *out);

/* KEK rotation: unwraps a wrapped DEK under the configured KEK and wraps it
 * under the KEK named by new_kek_uri (same token, same checks as the
 * configured KEK, not the same object), then proves the new blob unwraps.
 * The DEK exists outside the token only wrapped. For one thread. */
int token_dek_rewrap(Token *t, const char *new_kek_uri, const uint8_t *wrapped, size_t wrapped_len,
                     uint8_t ret_wrapped[TOKEN_WRAPPED_DEK_LEN]);

/* Token data objects (CKO_DATA; CKA_TOKEN, CKA_PRIVATE, not modifiable),
 * named by CKA_APPLICATION and CKA_LABEL, holding at most
 * TOKEN_DATA_VALUE_MAX bytes. Some tokens (SoftHSM 2.6) refuse to change
 * CKA_VALUE, so a new value is a new object: create, then destroy the old.
 * On a read/write session of their own; for one thread at a time per call. */
#define TOKEN_DATA_VALUE_MAX 512
typedef struct TokenData {
    unsigned long handle;
    size_t len;
    uint8_t value[TOKEN_DATA_VALUE_MAX];
} TokenData;
int token_data_create(Token *t, const char *application, const char *label, const uint8_t *value,
                      size_t len);
/* Finds every object with this application and label: *ret_n is the true
 * count; the first cap of them are read into ret. */
int token_data_find(Token *t, const char *application, const char *label, TokenData *ret,
                    size_t cap, size_t *ret_n);
int token_data_destroy(Token *t, unsigned long handle);
