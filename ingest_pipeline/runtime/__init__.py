"""Process wiring: settings from the environment, the Dagster instance and its run launcher."""
