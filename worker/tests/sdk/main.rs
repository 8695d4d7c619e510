//! Integration tests of the worker SDK: the `LISTEN_*` parser in-process, and
//! real worker processes (the `demo` example and the Python no-SDK worker)
//! started the way appvisor starts them — a real listening socket at fd 3, a
//! real `NOTIFY_SOCKET` — then asked real HTTP requests and sent real signals.

mod background;
mod harness;
mod listen_env;
mod processes;
