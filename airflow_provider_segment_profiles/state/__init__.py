"""Where a sync keeps what it knows between runs: the committed head, snapshots, journal, watermark."""
