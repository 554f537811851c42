#!/usr/bin/env bash
# `make robot-pi`: the robot client on a Raspberry Pi running Raspberry Pi OS bookworm 64-bit, in one command.
#
#   1. apt: python3-picamera2 (libcamera's Python bindings) and python3-venv, when they are missing;
#   2. .venv-robot: a venv of the system Python 3.11 with --system-site-packages (it sees apt's picamera2),
#      holding `.[robot]` with numpy pinned to apt's (picamera2 and simplejpeg are built against it) and
#      OpenCV < 4.12 (4.11.0.86 is the newest OpenCV wheel that takes numpy 1.x);
#   3. .venv-sdk: Python 3.8 from uv with robomaster==0.1.1.62 (the SDK has CPython 3.8 wheels only, and
#      0.1.1.62 is the newest with an aarch64 one), run by `--robot robomaster --sdk-python` as a bridge.
#
# Idempotent: run it again after a `git pull`. Options: --dry-run prints the commands and changes nothing;
# --force runs on another OS or machine; --no-sdk skips step 3 (no RoboMaster: --robot null or sim); --help.
# Environment: ROBOT_VENV, SDK_VENV, SYSTEM_PYTHON, OS_RELEASE.
set -euo pipefail

SDK_VERSION=0.1.1.62
SDK_PYTHON_VERSION=3.8
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROBOT_VENV=${ROBOT_VENV:-$REPO/.venv-robot}
SDK_VENV=${SDK_VENV:-$REPO/.venv-sdk}
SYSTEM_PYTHON=${SYSTEM_PYTHON:-/usr/bin/python3}
OS_RELEASE=${OS_RELEASE:-/etc/os-release}
DRY_RUN=0
FORCE=0
SDK=1

for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --force) FORCE=1 ;;
        --no-sdk) SDK=0 ;;
        -h | --help)
            # The comment block under the shebang.
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *)
            echo "setup_pi.sh: unknown option $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

say() {
    printf 'robot-pi: %s\n' "$*" >&2
}

# Print a command as a shell would read it back (single quotes where needed); run it unless --dry-run.
run() {
    local shown="+" arg
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            shown+=" $arg"
        else
            shown+=" '${arg//\'/\'\\\'\'}'"
        fi
    done
    printf '%s\n' "$shown"
    if [ "$DRY_RUN" = 0 ]; then
        "$@"
    fi
}

# The numpy that apt's picamera2 is built against: the system Python's, else the python3-numpy package's
# version (1:1.24.2-1+deb12u1 -> 1.24.2); empty when neither tells.
apt_numpy() {
    local version
    if version=$("$SYSTEM_PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null); then
        echo "$version"
        return
    fi
    # shellcheck disable=SC2016 # ${Version} is dpkg-query's field, not a shell variable
    version=$(dpkg-query -W -f='${Version}' python3-numpy 2>/dev/null || true)
    if [ -z "$version" ]; then
        version=$(apt-cache policy python3-numpy 2>/dev/null | sed -n 's/^ *Candidate: //p' || true)
    fi
    if [ "$version" = "(none)" ]; then
        version=""
    fi
    version=${version#*:}
    echo "${version%%-*}"
}

# ---------------------------------------------------------------- 0. the platform
codename=$(sed -n 's/^VERSION_CODENAME=//p' "$OS_RELEASE" 2>/dev/null | tr -d '"' || true)
arch=$(uname -m)
if [ "$codename" != bookworm ] || [ "$arch" != aarch64 ]; then
    say "this is for Raspberry Pi OS bookworm 64-bit (VERSION_CODENAME=bookworm in $OS_RELEASE, uname -m aarch64);"
    say "here: ${codename:-unknown} on $arch. It needs Raspberry Pi's apt archive (python3-picamera2), Python 3.11"
    say "as $SYSTEM_PYTHON and aarch64 wheels (robomaster==$SDK_VERSION). --force runs it anyway."
    if [ "$FORCE" = 0 ]; then
        exit 2
    fi
fi
if [ "$DRY_RUN" = 1 ]; then
    say "dry run: the commands are printed, nothing is changed"
fi
SUDO=()
if [ "$(id -u)" != 0 ]; then
    SUDO=(sudo)
fi

# ---------------------------------------------------------------- 1. apt: picamera2, venv
missing=()
for package in python3-picamera2 python3-venv; do
    # shellcheck disable=SC2016 # ${Status} is dpkg-query's field
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    run "${SUDO[@]}" apt-get update
    run "${SUDO[@]}" apt-get install -y "${missing[@]}"
else
    say "apt: python3-picamera2 and python3-venv are installed"
fi

# ---------------------------------------------------------------- 2. .venv-robot: the client, apt's numpy
numpy=$(apt_numpy)
if [ -z "$numpy" ]; then
    if [ "$DRY_RUN" = 0 ]; then
        say "cannot tell apt's numpy version: $SYSTEM_PYTHON does not import numpy and python3-numpy is unknown to apt"
        exit 1
    fi
    say "dry run: apt's numpy version is not known here (no python3-numpy in apt's lists)"
    numpy=APT_NUMPY_VERSION
fi
if [ -x "$ROBOT_VENV/bin/python" ] && grep -q '^include-system-site-packages = true' "$ROBOT_VENV/pyvenv.cfg"; then
    say "$ROBOT_VENV exists (with the system site packages)"
else
    run "$SYSTEM_PYTHON" -m venv --system-site-packages "$ROBOT_VENV"
fi
run "$ROBOT_VENV/bin/python" -m pip install --upgrade pip
run "$ROBOT_VENV/bin/python" -m pip install "${REPO}[robot]" "numpy==$numpy" "opencv-contrib-python-headless<4.12"
run "$ROBOT_VENV/bin/python" -c \
    'import cv2, numpy, picamera2; print("picamera2 with numpy", numpy.__version__, "and OpenCV", cv2.__version__)'
run "$ROBOT_VENV/bin/robotclient" --help

# ---------------------------------------------------------------- 3. .venv-sdk: Python 3.8 + the RoboMaster SDK
install_sdk() {
    local uv=$ROBOT_VENV/bin/uv
    if [ -x "$uv" ]; then
        say "uv is installed in $ROBOT_VENV"
    else
        run "$ROBOT_VENV/bin/python" -m pip install uv
    fi
    run "$uv" python install "$SDK_PYTHON_VERSION"
    if [ -x "$SDK_VENV/bin/python" ] \
        && "$SDK_VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 8))'; then
        say "$SDK_VENV exists (Python $SDK_PYTHON_VERSION)"
    else
        if [ -e "$SDK_VENV" ]; then
            run rm -rf "$SDK_VENV"
        fi
        run "$uv" venv -p "$SDK_PYTHON_VERSION" "$SDK_VENV"
    fi
    # 0.1.1.62's wheel declares no dependencies, but robomaster.robot imports numpy and cv2 (its camera module).
    run "$uv" pip install --python "$SDK_VENV/bin/python" "robomaster==$SDK_VERSION" numpy opencv-python-headless
    run "$SDK_VENV/bin/python" -c \
        'import robomaster.robot, robomaster.version; print("robomaster", robomaster.version.__version__)'
}

if [ "$SDK" = 1 ]; then
    install_sdk
else
    say "--no-sdk: no RoboMaster SDK (--robot null or sim only)"
fi

# ---------------------------------------------------------------- what to run next
echo "The robot client:  $ROBOT_VENV/bin/robotclient"
if [ "$SDK" = 1 ]; then
    echo "RoboMaster SDK:    --robot robomaster -c --sdk-python $SDK_VENV/bin/python" \
        "(or: export ROBOMASTER_PYTHON=$SDK_VENV/bin/python)"
fi
echo "Check it against a mesh (camera -> mesh -> tracker, no robot):"
echo "  $ROBOT_VENV/bin/robotclient run -i raspicam --robot null -n --server HOST:PORT"
