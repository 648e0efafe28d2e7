"""oncechat: exactly-once customer-service chat on API Gateway, Lambda, DynamoDB and SQS FIFO."""
