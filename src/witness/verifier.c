/* SPDX-License-Identifier: Apache-2.0 */
/* The thread that checks signatures made ahead of their transaction. */
#include "internal.h"

/* Signatures made ahead of the write transaction (witness_presign_batch) are
 * checked against the public key on a thread of their own, while the token
 * signs the next ones: a check costs about half a SoftHSM C_Sign. The thread
 * lives as long as the Witness (not one per batch). Each
 * check reports into its presign's state; witness_commit_batch waits for it
 * before it stores the signature. */
typedef struct Check {
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    uint8_t sig[TOKEN_ED25519_SIG_LEN];
    uint8_t *msg;
    size_t len;
    int *state; /* 0 while queued, then 1 (verified) or -1 */
    struct Check *next;
} Check;

struct Verifier {
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    Check *head, **tail;
    bool stop;
    pthread_t thread;
};

static void *verifier_main(void *arg)
{
    Verifier *v = arg;
    pthread_mutex_lock(&v->lock);
    for (;;) {
        while (!v->head && !v->stop)
            pthread_cond_wait(&v->work, &v->lock);
        Check *c = v->head;
        if (!c)
            break;
        if (!(v->head = c->next))
            v->tail = &v->head;
        pthread_mutex_unlock(&v->lock);
        bool ok = pubkey_verify(c->pk, c->msg, c->len, c->sig) == 0;
        pthread_mutex_lock(&v->lock);
        *c->state = ok ? 1 : -1;
        pthread_cond_broadcast(&v->done);
        free(c->msg);
        free(c);
    }
    pthread_mutex_unlock(&v->lock);
    return NULL;
}

Verifier *witness_verifier_new(void)
{
    Verifier *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    v->tail = &v->head;
    pthread_mutex_init(&v->lock, NULL);
    pthread_cond_init(&v->work, NULL);
    pthread_cond_init(&v->done, NULL);
    if (pthread_create(&v->thread, NULL, verifier_main, v) != 0) {
        pthread_cond_destroy(&v->done);
        pthread_cond_destroy(&v->work);
        pthread_mutex_destroy(&v->lock);
        free(v);
        return NULL;
    }
    return v;
}

void witness_verifier_free(Verifier *v)
{
    if (!v)
        return;
    pthread_mutex_lock(&v->lock);
    v->stop = true;
    pthread_cond_signal(&v->work);
    pthread_mutex_unlock(&v->lock);
    pthread_join(v->thread, NULL);
    pthread_cond_destroy(&v->done);
    pthread_cond_destroy(&v->work);
    pthread_mutex_destroy(&v->lock);
    free(v);
}

int witness_verifier_push(Verifier *v, const uint8_t pk[TOKEN_ED25519_PK_LEN], const uint8_t *msg,
                          size_t len, const uint8_t sig[TOKEN_ED25519_SIG_LEN], int *state)
{
    Check *c = calloc(1, sizeof(*c));
    if (!c || !(c->msg = malloc(len ? len : 1))) {
        free(c);
        return -ENOMEM;
    }
    memcpy(c->msg, msg, len);
    c->len = len;
    memcpy(c->pk, pk, sizeof(c->pk));
    memcpy(c->sig, sig, sizeof(c->sig));
    c->state = state;
    pthread_mutex_lock(&v->lock);
    *state = 0;
    *v->tail = c;
    v->tail = &c->next;
    pthread_cond_signal(&v->work);
    pthread_mutex_unlock(&v->lock);
    return 0;
}

bool witness_verifier_wait(Verifier *v, const int *state)
{
    pthread_mutex_lock(&v->lock);
    while (*state == 0)
        pthread_cond_wait(&v->done, &v->lock);
    bool ok = *state > 0;
    pthread_mutex_unlock(&v->lock);
    return ok;
}
