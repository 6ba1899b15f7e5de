# ruff: noqa: F401, I001, SIM117
"""The streaming guide's own client code, copied word for word from streaming-guide.txt.

Only the URL changed: the guide's literal ``https://infernetprotocol.com/api/v1/jobs`` became the
module global ``URL``, which a test points at its DevServer. Everything else, the guide's import
order (``asyncio`` included, which its usage line needs) and nested ``with`` blocks, is the guide's,
so ruff's import-sorting, unused-import and with-merging rules are off here.
"""

import asyncio
import httpx
import json
import os

URL = "https://infernetprotocol.com/api/v1/jobs"


# ---- copied from streaming-guide.txt (Python, async); only the URL changed ----------------------


async def stream_inference_async(prompt: str, model: str = "qwen2.5:14b"):
    token = os.environ["INFERNET_BEARER_TOKEN"]
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream(
            "POST",
            URL,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
            },
            json={
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "stream": True,
            },
        ) as response:
            response.raise_for_status()
            full_response = ""
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:].strip()
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                    if "text" in event:
                        full_response += event["text"]
                        print(event["text"], end="", flush=True)
                except json.JSONDecodeError:
                    pass
            return full_response


# ---- copied from streaming-guide.txt (Python, sync); only the URL changed -----------------------
def stream_inference(prompt: str, model: str = "qwen2.5:14b"):
    token = os.environ["INFERNET_BEARER_TOKEN"]
    with httpx.Client(timeout=120) as client:
        with client.stream(
            "POST",
            URL,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
            },
            json={
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "stream": True,
            },
        ) as response:
            response.raise_for_status()
            buffer = ""
            for chunk in response.iter_text():
                buffer += chunk
                lines = buffer.split("\n")
                buffer = lines[-1]  # Keep incomplete line
                for line in lines[:-1]:
                    if not line.startswith("data: "):
                        continue
                    data = line[6:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        event = json.loads(data)
                        if "error" in event:
                            raise RuntimeError(f"Stream error: {event['message']}")
                        if "text" in event:
                            print(event["text"], end="", flush=True)
                    except json.JSONDecodeError:
                        pass  # Skip malformed events


# ---- copied from streaming-guide.txt (JavaScript fetch); only the URL changed -------------------
JS_CLIENT = """
async function streamInference(prompt) {
const response = await fetch('%(url)s', {
method: 'POST',
headers: {
'Authorization': `Bearer ${process.env.INFERNET_BEARER_TOKEN}`,
'Content-Type': 'application/json',
'Accept': 'text/event-stream',
},
body: JSON.stringify({
model: 'qwen2.5:14b',
messages: [{ role: 'user', content: prompt }],
stream: true,
}),
});
if (!response.ok) {
const err = await response.json();
throw new Error(`API error: ${err.error_message}`);
}
const reader = response.body.getReader();
const decoder = new TextDecoder();
let buffer = '';
while (true) {
const { done, value } = await reader.read();
if (done) break;
buffer += decoder.decode(value, { stream: true });
const lines = buffer.split('\\n');
buffer = lines.pop(); // Keep incomplete line in buffer
for (const line of lines) {
if (!line.startsWith('data: ')) continue;
const data = line.slice(6).trim();
if (data === '[DONE]') return;
try {
const event = JSON.parse(data);
if (event.error) {
throw new Error(`Stream error: ${event.message}`);
}
if (event.text) {
process.stdout.write(event.text); // or append to UI
}
} catch (e) {
if (e.message.startsWith('Stream error')) throw e;
// Skip malformed events
}
}
}
}
// Usage
streamInference('What is the capital of France?')
.then(() => console.log('\\nDone'))
.catch(console.error);
"""
