"""`python -m buildfan` is the `buildfan` command."""

from buildfan.cli import console_main

console_main()
