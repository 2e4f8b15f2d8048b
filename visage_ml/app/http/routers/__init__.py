"""The routes of the HTTP API, one :class:`fastapi.APIRouter` per area."""
