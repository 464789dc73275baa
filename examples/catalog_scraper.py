"""Example scraper "catalog": 8 worker threads, each connecting per page.

usage: catalog_scraper.py [SECONDS]"""
import sys

from scraper_common import run

run("catalog", workers=8, seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 20, fetch_s=0.3)
