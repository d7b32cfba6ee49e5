# Stage bookkeeping shared by the recipes. Source it after ${exp}, ${stage} and ${stop_stage}
# are set. A finished stage leaves ${exp}/stamps/N.done and is skipped when the recipe runs again.
#
#   if run_stage 3 "train the teacher"; then ...; finish 3; fi
mkdir -p "${exp}/stamps"

# run_stage N NAME: true when stage N is selected and not finished before
run_stage() {
  [ "$1" -ge "${stage}" ] && [ "$1" -le "${stop_stage}" ] || return 1
  if [ -e "${exp}/stamps/$1.done" ]; then echo "stage $1 ($2): done before, skipped"; return 1; fi
  echo "=== stage $1: $2 ($(date -u +%H:%M:%S))"
}
finish() { touch "${exp}/stamps/$1.done"; }
# always_stage N NAME: true when stage N is selected (no stamp: the stage skips finished work itself)
always_stage() {
  [ "$1" -ge "${stage}" ] && [ "$1" -le "${stop_stage}" ] || return 1
  echo "=== stage $1: $2 ($(date -u +%H:%M:%S))"
}
