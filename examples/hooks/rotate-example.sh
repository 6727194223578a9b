#!/bin/bash
# An example rotator hook for vaultd (`--rotator exec:/path/to/this`), speaking
# the protocol in README "Rotation hooks". Its "provider" is a file of valid keys
# next to the script (demo-provider.keys), so it runs anywhere; for a real
# provider, replace the three marked lines with calls to its admin API (curl with
# an admin credential read from a root-only file, never from argv or the env).
#
# vaultd runs it once per step with a cleared environment:
#   VAULTD_STEP      create | test | revoke-old
#   VAULTD_SECRET    env/name (also VAULTD_ENV, VAULTD_NAME, VAULTD_PROVIDER)
#   VAULTD_VERSION   the version the step is about
# stdin: create → the current value; test → the new value; revoke-old → the old one.
# stdout (create only): the new value, one line. Exit non-zero to fail the step;
# the last stderr line becomes part of vaultd's error message (never print a value).
set -euo pipefail
umask 077
provider="$(dirname "$(readlink -f "$0")")/demo-provider.keys"
# vaultd may run one rotation's revoke-old while the next one creates: the file
# is rewritten whole on revoke, so steps take turns (a real provider's API is
# its own lock).
exec 9>>"$provider.lock"
flock 9
touch "$provider"
value=$(cat)

case "$VAULTD_STEP" in
create)
    new="demo_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "$new" >> "$provider"                  # provider: issue a new key
    echo "$new"
    ;;
test)
    grep -qxF -- "$value" "$provider" || { echo "the provider does not know the new key" >&2; exit 1; }  # provider: try the key
    ;;
revoke-old)
    grep -vxF -- "$value" "$provider" > "$provider.tmp" || true   # provider: revoke the key
    mv "$provider.tmp" "$provider"
    ;;
*)
    echo "unknown step $VAULTD_STEP" >&2
    exit 2
    ;;
esac
