"""Example scraper "news": 12 worker threads, each connecting per page.

usage: news_scraper.py [SECONDS]"""
import sys

from scraper_common import run

run("news", workers=12, seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 20, fetch_s=0.25)
