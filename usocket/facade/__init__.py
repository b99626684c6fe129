"""The socket facade: the stdlib ``socket`` module's API over the userland stack.

- :mod:`.sockets`: the ``socket`` class (a real descriptor per socket, see :mod:`.bridge`).
- :mod:`.bridge`: the stack-thread side moving bytes between descriptors and connections.
- :mod:`.names`: name and address resolution (``getaddrinfo`` & co.) through the stack's DNS.
- :mod:`.api`: the module-level helpers (``create_connection``, ``create_server``, ...).

``usocket/__init__.py`` assembles these into a module that is a drop-in for ``socket``.
"""
