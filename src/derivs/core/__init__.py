"""Framework-free core: requests -> plans -> execution over a backend protocol."""
