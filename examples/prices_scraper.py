"""Example scraper "prices": 8 worker threads, each connecting per page.

usage: prices_scraper.py [SECONDS]"""
import sys

from scraper_common import run

run("prices", workers=8, seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 20, fetch_s=0.15)
