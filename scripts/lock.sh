#!/usr/bin/env bash
# Regenerate requirements/lock.txt from the current .venv (after adding or upgrading a package).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Pinned for CI and images: pip freeze of the tested .venv (regenerate: scripts/lock.sh). Installed with --no-deps."
  .venv/bin/pip freeze --exclude-editable | grep -v -i "^emotions-pl"
} > requirements/lock.txt
