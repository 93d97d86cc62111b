"""Remote calls: the DSS client, the bulk-import client and S3. The only users of requests and
boto3 on the client side.
"""
