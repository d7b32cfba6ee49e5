"""ESPnet task classes of the plugin (they import ESPnet; import them explicitly).

Each task module calls :func:`espnet_plugin.utils.quiet_import.import_espnet_quietly` before
importing ESPnet, so that ``--print_config`` output stays valid YAML.
"""
