"""The engine: continuous batching of many requests over one model, one worker thread."""
