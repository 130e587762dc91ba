"""Running commands confined to the workspace: policy, the bubblewrap backend, the probe."""
