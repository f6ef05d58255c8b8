"""Speed, size and memory measurements; each ``bench_*.py`` module's ``main()`` prints a table."""
