"""Alert rules: the model, the YAML loader, pure evaluation and the unit-test runner."""
