"""The request pipeline (``pipeline``), auto routing (``auto``), accounting and upstream resilience."""
