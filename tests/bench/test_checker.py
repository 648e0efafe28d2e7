"""The chaos checker finds every kind of failure it reports (and none in a clean run)."""

from bench.checker import Accepted, Processed, Sent, check

PARTICIPANTS = {"c1": ["alice", "bob"]}


def run(n=3):
    sent = [Sent("alice", "c1", f"m{i}", f"body {i}") for i in range(1, n + 1)]
    accepted = [Accepted("alice", "c1", f"m{i}", i) for i in range(1, n + 1)]
    processed = {who: [Processed("c1", i, f"m{i}", f"body {i}") for i in range(1, n + 1)]
                 for who in ("alice", "bob")}
    return sent, accepted, processed


def test_a_clean_run_is_ok():
    report = check(*run(), PARTICIPANTS)
    assert report.ok and report.delivered == report.expected_deliveries == 6
    assert (report.sent, report.accepted) == (3, 3)


def test_a_missing_processing_is_a_loss():
    sent, accepted, processed = run()
    processed["bob"].pop()
    report = check(sent, accepted, processed, PARTICIPANTS)
    assert not report.ok and report.lost == 1 and report.delivered == 5


def test_a_repeated_processing_is_a_duplicate_and_out_of_order():
    sent, accepted, processed = run()
    processed["bob"].insert(2, processed["bob"][1])
    report = check(sent, accepted, processed, PARTICIPANTS)
    assert report.duplicated == 1 and report.out_of_order == 1 and not report.ok


def test_a_swap_is_out_of_order():
    sent, accepted, processed = run()
    p = processed["alice"]
    p[0], p[1] = p[1], p[0]
    report = check(sent, accepted, processed, PARTICIPANTS)
    # 2 after 0, 1 after 2, 3 after 1: each processing that is not the previous + 1
    assert report.out_of_order == 3 and report.lost == 0 and report.duplicated == 0


def test_wrong_content_is_a_mismatch():
    sent, accepted, processed = run()
    processed["bob"][0] = Processed("c1", 1, "m1", "tampered")
    assert check(sent, accepted, processed, PARTICIPANTS).mismatched == 1


def test_an_unaccepted_send_and_seq_errors():
    sent, accepted, processed = run()
    sent.append(Sent("alice", "c1", "m9", "never"))
    accepted.append(Accepted("alice", "c1", "m1", 7))  # one messageId, two seqs
    report = check(sent, accepted, processed, PARTICIPANTS)
    assert report.unaccepted == 1 and report.seq_errors >= 1 and not report.ok


def test_a_gap_in_accepted_seqs_is_a_seq_error():
    sent, accepted, processed = run()
    accepted[2] = Accepted("alice", "c1", "m3", 4)
    assert check(sent, accepted, processed, PARTICIPANTS).seq_errors >= 1


def with_system_message():
    """seq 1 is the server's "assigned" event, the three sends are seqs 2..4."""
    sent = [Sent("alice", "c1", f"m{i}", f"body {i}") for i in range(2, 5)]
    accepted = [Accepted("alice", "c1", f"m{i}", i) for i in range(2, 5)]
    processed = {who: [Processed("c1", 1, "system-1", "bob joined", True)]
                 + [Processed("c1", i, f"m{i}", f"body {i}") for i in range(2, 5)]
                 for who in ("alice", "bob")}
    return sent, accepted, processed


def test_system_messages_take_their_seqs_and_must_reach_everyone():
    report = check(*with_system_message(), PARTICIPANTS)
    assert report.ok and report.system_messages == 1
    assert report.delivered == report.expected_deliveries == 8


def test_a_system_message_one_participant_missed_is_a_loss():
    sent, accepted, processed = with_system_message()
    processed["bob"].pop(0)
    report = check(sent, accepted, processed, PARTICIPANTS)
    assert not report.ok and report.lost == 1


def test_a_system_message_nobody_processed_leaves_a_seq_hole():
    sent, accepted, processed = with_system_message()
    for who in processed:
        processed[who].pop(0)
    report = check(sent, accepted, processed, PARTICIPANTS)
    assert not report.ok and report.seq_errors == 1


def test_a_system_message_at_an_accepted_seq_is_a_seq_error():
    sent, accepted, processed = run()
    processed["bob"].insert(0, Processed("c1", 1, "system-1", "bob joined", True))
    report = check(sent, accepted, processed, PARTICIPANTS)
    assert not report.ok and report.seq_errors >= 1


def test_void_seqs_complete_the_sequence_and_must_reach_everyone():
    sent = [Sent("alice", "c1", f"m{i}", f"body {i}") for i in (1, 3)]
    accepted = [Accepted("alice", "c1", "m1", 1), Accepted("alice", "c1", "m3", 3)]
    void = Processed("c1", 2, "void-2", "", void=True)
    both = {who: [Processed("c1", 1, "m1", "body 1"), void, Processed("c1", 3, "m3", "body 3")]
            for who in ("alice", "bob")}
    report = check(sent, accepted, both, {"c1": ["alice", "bob"]})
    assert report.ok and (report.void_seqs, report.delivered) == (1, 6)
    both["bob"].remove(void)  # bob passed over seq 2 without processing it
    report = check(sent, accepted, both, {"c1": ["alice", "bob"]})
    assert not report.ok and report.lost == 1 and report.out_of_order == 1
