"""Training with Lightning (the only subpackage that imports it): data module, tasks, train, sweeps."""
