"""What holds state: the ledger, the key vault, tenants' CyborgDB indexes, the landing zone, migrations."""
