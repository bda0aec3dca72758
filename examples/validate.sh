#!/usr/bin/env bash
# Check the recommendations on prompts the study never saw, before shipping them.
#   examples/validate.sh [studies/demo.toml] [holdout.txt]
# By default: the study file's <name>_holdout.txt beside it (studies/demo_holdout.txt: glyph, ink and
# background combinations no demo class lists; studies/demo_flow_holdout.txt: combinations the flow
# model never saw in training), on seeds the study never used.
# Exit code 0: every class held its tolerance on the held-out prompts; 1: one did not, or got none.
set -euo pipefail
study="${1:-studies/demo.toml}"
autotune="${AUTOTUNE:-.venv/bin/autotune}"
holdout="${2:-${study%.toml}_holdout.txt}"
"$autotune" validate "$study" --prompts "$holdout" --seeds 10,11
