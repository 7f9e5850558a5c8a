#!/usr/bin/env bash
# The main job, from a fresh clone: set up .venv, train the default models if missing, build the TorchServe
# archives and the Triton repository, (re)start both servers on loopback, send sample requests, print the answers.
# The servers keep running afterwards; the last lines say how to query and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
maas=.venv/bin/maas

[[ -f artifacts/digits/held_out.jsonl ]] || $maas train digits --out artifacts/digits        # ~10 s
[[ -f artifacts/sentiment/held_out.jsonl ]] || $maas train text --out artifacts/sentiment  # ~2-3 min
[[ -f artifacts/demo-lm/held_out.jsonl ]] || $maas train lm --out artifacts/demo-lm          # ~3 min
# each in its measured default format (README: Model formats); the language model as trained
$maas build artifacts/digits artifacts/sentiment artifacts/demo-lm

# Restart whatever an earlier Quick start left running, so the servers load the archives just built.
$maas serve stop >/dev/null 2>&1 || true
$maas serve start
echo
$maas samples
cat <<'TXT'

Both servers keep running. Query them (README.md has more):
  KEY=$(.venv/bin/python -c "import json; print(json.load(open('key_file.json'))['inference']['key'])")
  curl -H "Authorization: Bearer $KEY" -H "Content-Type: image/png" --data-binary @artifacts/sample_digit.png \
       http://127.0.0.1:8080/predictions/digits
  curl -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
       -d '{"text": "What a delight!"}' http://127.0.0.1:8080/predictions/sentiment
  curl http://127.0.0.1:8000/v2/models/sentiment        # Triton model metadata (V2 protocol)
  curl -N http://127.0.0.1:9000/v1/chat/completions -H "Authorization: Bearer $(.venv/bin/maas serve key openai)" \
       -H "Content-Type: application/json" -d '{"model": "demo-lm", "stream": true,
       "messages": [{"role": "user", "content": "What does json.dumps do?"}]}'     # the OpenAI API, over Triton
Stop them:
  .venv/bin/maas serve stop
TXT
