"""A plain FastAPI app on uvicorn serving ``user_model`` one request at a time (no batching): what a user writes
first. Run: ``python fastapi_app.py ARTIFACT PORT``."""

import sys

import uvicorn
from fastapi import FastAPI
from user_model import load

app = FastAPI()
model = load(sys.argv[1])


@app.post("/predict")
def predict(row: dict) -> dict:
    return model.predict([row])[0]


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
