"""The responses function: OpenAI's Responses API's state, each tenant's stored responses (previous_response_id,
GET and DELETE /v1/responses/{id})."""
