# SPDX-License-Identifier: Apache-2.0
# bash completion for attesto-local-vault: global options, verbs, each verb's
# options and their values. Installed as
# /usr/share/bash-completion/completions/attesto-local-vault.
# tests/completion/ checks it against src/main.c, src/config.c and the verbs.

_attesto_local_vault_globals="--spool-db --witness-db --installation-id --witness-id --relay-url
  --key-id --signing-key --encryption-key --pkcs11-module --pin-file --ca-file
  --pinned-public-key --receipt-keys-file --relay-token-file --witness-tenants --log-level --spool-max-items --spool-max-bytes --json --help --version"
# Global options that take no value.
_attesto_local_vault_global_flags=" --json --help --version "

_attesto_local_vault_verbs="keys public-key enqueue status list show dead-letter purge retry-now verify
  drain-once drain-loop witness-checkpoint witness-serve witness-forks witness-state doctor receipts spool"

# The options of a verb (or of "verb sub").
_attesto_local_vault_verb_options() {
    case $1 in
    "keys init") echo "--help" ;;
    keys) echo "--help" ;;
    public-key) echo "--format --help" ;;
    enqueue) echo "--stream-id --source-ref --event-type --payload-file --jsonl --include-payload --help" ;;
    status) echo "--json --help" ;;
    list) echo "--state --stream-id --limit --after --json --help" ;;
    show) echo "--json --payload --help" ;;
    "dead-letter list") echo "--stream-id --limit --after --json --help" ;;
    "dead-letter requeue") echo "--all --help" ;;
    purge) echo "--receipted-before --help" ;;
    retry-now) echo "--all --stream-id --help" ;;
    verify) echo "--public-key --bundle --receipt-key --json --help" ;;
    "receipts export") echo "--stream-id --since --out --json --help" ;;
    drain-once) echo "--max-in-flight --max-attempts --timeout-ms --connect-timeout-ms --lease-ms
        --backoff-base-ms --json --help" ;;
    drain-loop) echo "--max-in-flight --max-attempts --timeout-ms --connect-timeout-ms --lease-ms
        --backoff-base-ms --stop-grace-ms --metrics-file --json --help" ;;
    witness-checkpoint) echo "--tenant-id --stream-id --checkpoint-id --checkpoint-seq-no
        --checkpoint-hash --previous-checkpoint-hash --help" ;;
    witness-serve) echo "--listen --threads --max-body-bytes --rate-limit --rate-burst --idle-exit
        --max-connections --max-connections-per-peer --request-timeout --help" ;;
    witness-forks) echo "--tenant-id --stream-id --json --help" ;;
    "witness-state show") echo "--json --help" ;;
    "witness-state adopt") echo "--confirm --help" ;;
    doctor) echo "--json --connect-timeout-ms --timeout-ms --help" ;;
    "spool deks" | "spool rotate-dek") echo "--json --help" ;;
    "spool rekey") echo "--batch --json --help" ;;
    "spool rewrap-kek") echo "--new-encryption-key --json --help" ;;
    esac
}

# Subcommands of the verbs that have them.
_attesto_local_vault_subcommands() {
    case $1 in
    keys) echo "init" ;;
    dead-letter) echo "list requeue" ;;
    receipts) echo "export" ;;
    spool) echo "deks rotate-dek rekey rewrap-kek" ;;
    witness-state) echo "show adopt" ;;
    esac
}

# Options (global or of a verb) whose value is a flag-free word: no
# completion of options after them.
_attesto_local_vault_takes_value() {
    case $1 in
    --json | --help | --version | --include-payload | --payload | --all | --confirm) return 1 ;;
    --*) return 0 ;;
    esac
    return 1
}

_attesto_local_vault_values() {
    local opt=$1 cur=$2
    case $opt in
    --spool-db | --witness-db | --pin-file | --ca-file | --pkcs11-module | --pinned-public-key | \
        --receipt-keys-file | --relay-token-file | --witness-tenants | \
        --payload-file | --jsonl | --public-key | --metrics-file | --bundle | --receipt-key | --out)
        compgen -f -- "$cur"
        ;;
    --log-level) compgen -W "error warning notice info debug" -- "$cur" ;;
    --format) compgen -W "json pem hex" -- "$cur" ;;
    --state) compgen -W "queued relaying receipted dead_letter quarantined" -- "$cur" ;;
    --signing-key) compgen -W "pkcs11:token=attesto;object=lv-signing;type=private" -- "$cur" ;;
    --encryption-key | --new-encryption-key) compgen -W "pkcs11:token=attesto;object=lv-spool-kek;type=secret-key" -- "$cur" ;;
    --relay-url) compgen -W "https://" -- "$cur" ;;
    --listen) compgen -W "unix: 127.0.0.1:" -- "$cur" ;;
    esac
}

_attesto_local_vault() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=""
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}
    COMPREPLY=()

    # Walk the words before the cursor: global options (and their values),
    # then the verb, then a subcommand.
    local i=1 w verb="" sub="" expect_value=""
    while ((i < COMP_CWORD)); do
        w=${COMP_WORDS[i]}
        if [[ -n $expect_value ]]; then
            expect_value=""
        elif [[ -z $verb ]]; then
            if [[ $w == --*=* ]]; then
                :
            elif [[ $w == --* ]]; then
                [[ $_attesto_local_vault_global_flags == *" $w "* ]] || expect_value=1
            else
                verb=$w
            fi
        elif [[ -z $sub && -n $(_attesto_local_vault_subcommands "$verb") && $w != -* ]]; then
            sub=$w
        elif [[ $w == --* && $w != *=* ]] && _attesto_local_vault_takes_value "$w"; then
            expect_value=1
        fi
        ((i++))
    done

    # The value of the option just before the cursor.
    if [[ -n $expect_value ]]; then
        mapfile -t COMPREPLY < <(_attesto_local_vault_values "$prev" "$cur")
        return 0
    fi
    if [[ $cur == --*=* ]]; then
        local opt=${cur%%=*}
        mapfile -t COMPREPLY < <(_attesto_local_vault_values "$opt" "${cur#*=}")
        COMPREPLY=("${COMPREPLY[@]/#/$opt=}")
        return 0
    fi

    if [[ -z $verb ]]; then
        if [[ $cur == -* ]]; then
            mapfile -t COMPREPLY < <(compgen -W "$_attesto_local_vault_globals" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W "$_attesto_local_vault_verbs" -- "$cur")
        fi
        return 0
    fi
    local subs
    subs=$(_attesto_local_vault_subcommands "$verb")
    if [[ -n $subs && -z $sub ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$subs" -- "$cur")
        return 0
    fi
    local key=$verb
    [[ -n $sub ]] && key="$verb $sub"
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_attesto_local_vault_verb_options "$key")" -- "$cur")
    elif [[ $verb == verify ]]; then
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    fi
    return 0
}

complete -F _attesto_local_vault attesto-local-vault
