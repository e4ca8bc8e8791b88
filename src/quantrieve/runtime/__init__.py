"""Runtime helpers shared by every layer: atomic writes, safe output folders, devices,
checkpoints, run records and the progress protocol."""
