"""Paper recipes as absl apps: `python -m ftwt_keras.recipes.<name> --help`."""
