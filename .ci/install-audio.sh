#!/usr/bin/env bash
# Add stable-audio-tools' text-to-audio path to a Python environment without letting pip touch
# torch or any other installed distribution: it only adds what is missing, and deletes nothing.
# .ci/install_audio.py says what it installs, what it leaves out and why.
# Usage: bash .ci/install-audio.sh      (PYTHON=/path/to/python to pick an interpreter)
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "$0")/install_audio.py"
