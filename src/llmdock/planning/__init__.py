"""Pure decisions: which GPUs, which port, what engine argv and container config. No I/O here."""
