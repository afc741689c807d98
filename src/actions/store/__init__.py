"""Store backends with Kubernetes semantics behind one interface."""
