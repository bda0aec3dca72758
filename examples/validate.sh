#!/usr/bin/env bash
# Check the recommendations on prompts the study never saw, before shipping them.
#   examples/validate.sh [studies/demo.toml] [holdout.txt]
# Without a prompt file it uses paraphrases of the demo's digit prompts, on seeds the study never used.
# Exit code 0: every class held its tolerance on the held-out prompts; 1: one did not, or got none.
set -euo pipefail
study="${1:-studies/demo.toml}"
autotune="${AUTOTUNE:-.venv/bin/autotune}"
holdout="${2:-}"
if [ -z "$holdout" ]; then
  holdout="$(mktemp --suffix=.txt)"
  trap 'rm -f "$holdout"' EXIT
  cat > "$holdout" <<'PROMPTS'
handwritten digit zero
a digit six
a handwritten nine
a digit seven
handwritten four
a handwritten digit two
PROMPTS
fi
"$autotune" validate "$study" --prompts "$holdout" --seeds 10,11
