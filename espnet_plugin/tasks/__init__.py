"""ESPnet task classes (they import ESPnet; import them explicitly)."""
