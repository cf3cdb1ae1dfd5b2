#!/bin/sh
# A governor worker in POSIX shell (protocol: jsonl): handles "shell:upper", which answers
# its first argument in upper case. Jobs are JSON lines on $GOVERNOR_JOBS_FD, answers JSON
# lines on $GOVERNOR_RESULTS_FD; what it prints on stdout or stderr is governor's log.
eval "exec 3<&$GOVERNOR_JOBS_FD 4>&$GOVERNOR_RESULTS_FD"
field() { printf '%s' "$1" | sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p"; }
while IFS= read -r line <&3; do
  id=$(field "$line" id)
  case "$line" in *'"soft_timeout"'*) continue ;; esac
  handler=$(field "$line" handler)
  arg=$(printf '%s' "$line" | sed -n 's/.*"args": *\["\([^"]*\)".*/\1/p')
  echo "job $id $handler"
  if [ "$handler" = "shell:upper" ]; then
    printf '{"id":"%s","ok":true,"result":"%s"}\n' "$id" "$(printf '%s' "$arg" | tr a-z A-Z)" >&4
  else
    printf '{"id":"%s","ok":false,"error":"no handler %s","retry":false}\n' "$id" "$handler" >&4
  fi
done
