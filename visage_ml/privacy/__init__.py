"""The privacy core: signed ledger, subject registry, identity vault, consent snapshot, rights."""
