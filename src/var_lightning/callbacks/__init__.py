"""Lightning callbacks: image logging, throughput, metrics files."""
