"""Typed keys for objects stored on the aiohttp application."""

from aiohttp import web

from mixroute.gateway import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
