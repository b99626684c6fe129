"""usocket_hijack: run unmodified Python programs on the userland stack (issue 5; not yet built)."""
