#!/bin/sh
# The PostgreSQL lease store's driver (setup.cfg extra "postgresql"); without
# it the PostgreSQL tests skip with that reason.
set -eu
python3 -m pip install -q 'psycopg[binary]>=3.1'
