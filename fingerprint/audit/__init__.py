"""Radioactivity audits: was a suspect model trained on text carrying our watermark key?"""
