"""Where the joules come from: the `PowerSource` protocol and the readings
that cross it (`source`), CodeCarbon's models behind it (`codecarbon`,
`cpu`, `process_share`), NVIDIA GPUs (`nvml`), and the one sampler thread
per process that reads a source into its ledger (`sampler`)."""
