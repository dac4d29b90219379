import XCTest
final class FixedPointTestsPlaceholder: XCTestCase { func testPlaceholder() {} }
