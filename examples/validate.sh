#!/usr/bin/env bash
# Check the recommendations on prompts the study never saw, before shipping them.
#   examples/validate.sh [studies/demo.toml]
# Exit code 0: every class held its tolerance on the held-out prompts; 1: one did not.
set -euo pipefail
study="${1:-studies/demo.toml}"
autotune="${AUTOTUNE:-.venv/bin/autotune}"
holdout="$(mktemp --suffix=.txt)"
trap 'rm -f "$holdout"' EXIT
cat > "$holdout" <<'PROMPTS'
a portrait of an old sailor with a grey beard
a close-up photo of a laughing child
a misty mountain lake at dusk
a desert canyon under a full moon
PROMPTS
"$autotune" validate "$study" --prompts "$holdout" --seeds 0,1
