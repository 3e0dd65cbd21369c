# shellcheck shell=bash
# Shared Python virtual-environment helpers for scripts/test and scripts/up.
# Source this file from the repository root; it defines functions only.
#
#   fg_venv_ensure [EXTRAS]   create ./.venv if needed and `pip install -e .[EXTRAS]` unless the
#                             stamp says this pyproject.toml is already installed with those extras.
#
# The stamp (.venv/.fleetguard-installed) holds "<sha256 of pyproject.toml> <python version> <extras>".
# Editable install: source changes never need a reinstall; dependency or entry-point changes in
# pyproject.toml change its hash and trigger one.

FG_VENV_DIR="${FG_VENV_DIR:-.venv}"
FG_VENV_STAMP="$FG_VENV_DIR/.fleetguard-installed"
FG_MIN_PYTHON="3.11"

# Print the path of the interpreter to build the venv with: python3.11 first, then newer ones,
# then python3; the first that is at least $FG_MIN_PYTHON and can create a venv.
fg_pick_python() {
    local candidate path
    for candidate in python3.11 python3.12 python3.13 python3; do
        path="$(command -v "$candidate" 2>/dev/null)" || continue
        # Debian's own python3.11 lacks ensurepip unless python3-venv is installed: skip it then.
        if "$path" -c 'import sys, ensurepip, venv; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
            >/dev/null 2>&1; then
            printf '%s\n' "$path"
            return 0
        fi
    done
    echo "error: no Python >= $FG_MIN_PYTHON with venv/ensurepip found (looked for python3.11, python3.12, python3.13, python3)" >&2
    return 1
}

fg_sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
    fi
}

# fg_venv_ensure [EXTRAS]: EXTRAS is a comma-separated list such as "test" (may be empty).
fg_venv_ensure() {
    local want_extras="${1:-}" python venv_py have_hash have_pyver have_extras hash pyver extras spec e

    venv_py="$FG_VENV_DIR/bin/python"
    # A venv whose interpreter no longer runs (base Python moved or upgraded) is rebuilt.
    if [[ -e "$FG_VENV_DIR" ]] && ! "$venv_py" -c 'import sys' >/dev/null 2>&1; then
        echo "    $FG_VENV_DIR is broken; recreating it"
        rm -rf "$FG_VENV_DIR"
    fi
    if [[ ! -x "$venv_py" ]]; then
        python="$(fg_pick_python)"
        echo "    creating $FG_VENV_DIR with $python ($("$python" --version 2>&1))"
        "$python" -m venv "$FG_VENV_DIR"
    fi

    hash="$(fg_sha256 pyproject.toml)"
    pyver="$("$venv_py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
    have_hash="" have_pyver="" have_extras=""
    if [[ -f "$FG_VENV_STAMP" ]]; then
        read -r have_hash have_pyver have_extras <"$FG_VENV_STAMP" || true
    fi

    # Extras to install: the ones asked for plus the ones the stamp says are installed, so that
    # `scripts/up` (no extras) after `scripts/test` (test extras) keeps the stamp valid for both.
    extras="$(printf '%s\n' "${want_extras//,/$'\n'}" "${have_extras//,/$'\n'}" \
        | sed '/^$/d' | sort -u | paste -sd, -)"

    if [[ "$have_hash" == "$hash" && "$have_pyver" == "$pyver" ]] \
        && "$venv_py" -c 'import importlib.metadata as m; m.version("fleetguard")' >/dev/null 2>&1; then
        local missing=0
        for e in ${want_extras//,/ }; do
            [[ ",$have_extras," == *",$e,"* ]] || missing=1
        done
        if [[ $missing -eq 0 ]]; then
            echo "    $FG_VENV_DIR is up to date (pyproject.toml unchanged)"
            return 0
        fi
    fi

    spec="."
    [[ -n "$extras" ]] && spec=".[$extras]"
    echo "    pip install -e '$spec'"
    rm -f "$FG_VENV_STAMP"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$venv_py" -m pip install -q -e "$spec"
    printf '%s %s %s\n' "$hash" "$pyver" "$extras" >"$FG_VENV_STAMP"
}
