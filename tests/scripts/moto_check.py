"""Independent checks for the AMI test, with boto3 (which comes with moto).

    moto_check.py readback ENDPOINT SNAPSHOT OUT
        Reads every block of an EBS snapshot back through the EBS direct APIs
        (ListSnapshotBlocks, GetSnapshotBlock) into the sparse file OUT, sized to the
        snapshot's volume, and prints {"block_size", "blocks", "volume_size_gib"} as JSON.

    moto_check.py requests RECORDING
        Prints the requests moto's recorder logged (MOTO_ENABLE_RECORDING) as a JSON list
        of {"method", "path", "action", "params"}: "action" and "params" are the EC2 Query
        form fields, when the request is one.
"""

import base64
import json
import sys
import urllib.parse

import boto3


def client(endpoint):
    return boto3.client(
        "ebs",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def readback(endpoint, snapshot, out):
    ebs = client(endpoint)
    blocks, token, block_size, volume_size = [], None, None, None
    while True:
        kwargs = {"SnapshotId": snapshot}
        if token:
            kwargs["NextToken"] = token
        page = ebs.list_snapshot_blocks(**kwargs)
        block_size = page["BlockSize"]
        volume_size = page["VolumeSize"]
        blocks.extend(page["Blocks"])
        token = page.get("NextToken")
        if not token:
            break
    with open(out, "wb") as f:
        f.truncate(volume_size << 30)
        for block in blocks:
            data = ebs.get_snapshot_block(
                SnapshotId=snapshot,
                BlockIndex=block["BlockIndex"],
                BlockToken=block["BlockToken"],
            )["BlockData"].read()
            f.seek(block["BlockIndex"] * block_size)
            f.write(data)
    json.dump(
        {"block_size": block_size, "blocks": len(blocks), "volume_size_gib": volume_size},
        sys.stdout,
    )


def requests(recording):
    out = []
    for line in open(recording):
        entry = json.loads(line)
        body = entry.get("body") or ""
        body = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
        path = urllib.parse.urlparse(entry["url"]).path
        action, params = None, {}
        if entry["method"] == "POST" and body[:200].find(b"Action=") >= 0:
            fields = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
            params = {k: v[0] for k, v in fields.items()}
            action = params.get("Action")
        out.append({"method": entry["method"], "path": path, "action": action, "params": params})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1:2] == ["readback"] and len(sys.argv) == 5:
        readback(*sys.argv[2:])
    elif sys.argv[1:2] == ["requests"] and len(sys.argv) == 3:
        requests(sys.argv[2])
    else:
        sys.exit(__doc__)
