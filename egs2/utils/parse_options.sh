# Option parsing shared by the recipes, as Kaldi's / ESPnet's utils/parse_options.sh:
# `--some_option VALUE` sets the shell variable `some_option`, which the recipe must define
# (with its default) before sourcing this file:
#
#   stage=1; exp=exp
#   . "$(dirname "$0")/../utils/parse_options.sh"
#
# An option the recipe does not define, or one without a value, stops the recipe (exit 2).
while [ $# -gt 0 ]; do
  case "$1" in
    --*)
      _name=${1#--}
      _name=${_name//-/_}
      if ! [[ ${_name} =~ ^[a-z][a-z0-9_]*$ ]] || [ -z "${!_name+set}" ]; then
        echo "unknown option: $1" >&2
        exit 2
      fi
      if [ $# -lt 2 ]; then
        echo "option $1 needs a value" >&2
        exit 2
      fi
      printf -v "${_name}" '%s' "$2"
      shift 2
      ;;
    *)
      echo "unknown option: $1" >&2
      exit 2
      ;;
  esac
done
unset _name
