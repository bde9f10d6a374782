"""Where personas come from: the registry folder of adapters and persona cards."""
